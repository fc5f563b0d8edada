// Every workflow log line carries the instance id (from the search attribute the snapshot sets),
// next to the workflow id and run id the SDK adds itself.
import { workflowInfo, type WorkflowInterceptorsFactory } from '@temporalio/workflow';
import { INSTANCE_ID } from '../shared/search-attributes.js';

export const interceptors: WorkflowInterceptorsFactory = () => ({
  outbound: [
    {
      getLogAttributes(input, next) {
        const instanceId = workflowInfo().typedSearchAttributes.get(INSTANCE_ID);
        return next(instanceId ? { ...input, instanceId } : input);
      },
    },
  ],
});
