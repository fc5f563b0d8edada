// Where a worker's workflow code comes from. Compiled (dist/, `npm run build`): the bundle the
// build wrote, loaded by path, so no bundler (webpack) runs or stays in memory. From source (tsx,
// tests, `npm run worker`): bundled at start, once per process, so it is always the current code.
import type { WorkflowBundleOption } from '@temporalio/worker';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const fromSource = import.meta.url.endsWith('.ts');
const ext = fromSource ? 'ts' : 'js';
export const workflowsPath = fileURLToPath(new URL(`../workflows/index.${ext}`, import.meta.url));
export const workflowInterceptorsPath = fileURLToPath(new URL(`../workflows/interceptors.${ext}`, import.meta.url));
/** Written by `npm run build` (build-bundle.ts): dist/workflow-bundle.js. */
export const prebuiltBundlePath = fileURLToPath(new URL('../workflow-bundle.js', import.meta.url));

let bundle: Promise<WorkflowBundleOption> | undefined;

export function workflowBundle(): Promise<WorkflowBundleOption> {
  bundle ??= load();
  return bundle;
}

async function load(): Promise<WorkflowBundleOption> {
  if (!fromSource) {
    if (!existsSync(prebuiltBundlePath)) throw new Error(`the workflow bundle ${prebuiltBundlePath} is missing: run \`npm run build\``);
    return { codePath: prebuiltBundlePath };
  }
  // Loaded only here: the bundler (webpack) is most of an idle worker's memory otherwise.
  const { bundleWorkflowCode } = await import('@temporalio/worker');
  return bundleWorkflowCode({ workflowsPath, workflowInterceptorModules: [workflowInterceptorsPath], logger: quietBundlerLogger });
}

/** The bundler's progress chatter hides the worker's own start-up line: warnings and errors only. */
export const quietBundlerLogger = {
  log() {},
  trace() {},
  debug() {},
  info() {},
  warn: (m: string) => console.warn(m),
  error: (m: string) => console.error(m),
};
