// `npm run build`, second step: bundles the compiled workflow code (dist/workflows) into
// dist/workflow-bundle.js, as Temporal's `production` sample does, so that compiled workers load
// it by path (workflow-bundle.ts) and never run the bundler.
import { bundleWorkflowCode } from '@temporalio/worker';
import { writeFile } from 'node:fs/promises';
import { prebuiltBundlePath, quietBundlerLogger, workflowInterceptorsPath, workflowsPath } from './workflow-bundle.js';

/**
 * The SDK needs the bundle's inline source map (it maps workflow stack traces to file:line), but
 * not the sources inside it: every worker would parse and hold them, in two threads, for nothing.
 */
function withoutSourcesContent(bundle: string): string {
  const at = bundle.lastIndexOf('//# sourceMappingURL=data:');
  const data = bundle.indexOf('base64,', at) + 'base64,'.length;
  if (at < 0 || data < at) throw new Error('the workflow bundle has no inline source map');
  const map = JSON.parse(Buffer.from(bundle.slice(data).trim(), 'base64').toString()) as { sourcesContent?: unknown };
  delete map.sourcesContent;
  return `${bundle.slice(0, data)}${Buffer.from(JSON.stringify(map)).toString('base64')}\n`;
}

const { code } = await bundleWorkflowCode({
  workflowsPath,
  workflowInterceptorModules: [workflowInterceptorsPath],
  logger: quietBundlerLogger,
});
const written = withoutSourcesContent(code);
await writeFile(prebuiltBundlePath, written);
console.log(`wrote ${prebuiltBundlePath} (${Math.round(written.length / 1024)} KiB)`);
