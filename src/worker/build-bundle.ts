// `npm run build`, second step: bundles the compiled workflow code (dist/workflows) into
// dist/workflow-bundle.js, as Temporal's `production` sample does, so that compiled workers load
// it by path (workflow-bundle.ts) and never run the bundler.
import { bundleWorkflowCode } from '@temporalio/worker';
import { writeFile } from 'node:fs/promises';
import { prebuiltBundlePath, quietBundlerLogger, workflowInterceptorsPath, workflowsPath } from './workflow-bundle.js';

const { code } = await bundleWorkflowCode({ workflowsPath, workflowInterceptorModules: [workflowInterceptorsPath], logger: quietBundlerLogger });
await writeFile(prebuiltBundlePath, code);
console.log(`wrote ${prebuiltBundlePath} (${Math.round(code.length / 1024)} KiB)`);
