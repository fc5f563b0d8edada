// What a test with real worker processes stands on (faults-worker, faults-restore, reconcile-live):
// a temp dir for the workers' store and snapshots, their settings, a slow guest in the stack's data
// dir, their SQLite store (the test reads what they recorded), and the workers themselves. At the
// end the guest's images go from Glance with it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { deleteImagesOfInstances } from './images.js';
import { createSlowGuest, STACK_GUESTS } from './slow-guest.js';
import { WorkerProcesses, workerTestEnv } from './worker-process.js';

export class WorkerTest<S extends Record<string, string>> {
  readonly dir: string;
  readonly env: ReturnType<typeof workerTestEnv> & S;
  readonly workers: WorkerProcesses;
  private guest: Guest | undefined;
  private store: SqliteStore | undefined;

  /** `tag` names the temp dir, the host and the task queue; `settings` go on top of workerTestEnv's. */
  constructor(tag: string, settings: S) {
    this.dir = mkdtempSync(join(tmpdir(), `vmsnap-${tag}-`));
    this.env = { ...workerTestEnv(tag, this.dir), ...settings };
    this.workers = new WorkerProcesses(this.env);
  }

  /** For before(): the guest, running and counting, with `dataMiB` of data; the store, migrated. */
  async setUp(guestName: string, dataMiB: number): Promise<{ guest: Guest; store: SqliteStore }> {
    const guest = await createSlowGuest({ name: guestName, ...STACK_GUESTS, dataMiB });
    this.guest = guest;
    this.store = new SqliteStore(this.env.VMSNAP_STORE_PATH);
    await this.store.migrate();
    return { guest, store: this.store };
  }

  /** For after(): the workers killed, the store closed, the guest, its images and the temp dir removed. */
  async tearDown(): Promise<void> {
    await this.workers.killAll();
    await this.store?.close();
    if (this.guest) {
      await removeGuest(this.guest.name, STACK_GUESTS.guestsDir).catch(() => undefined);
      await deleteImagesOfInstances([this.guest.uuid]);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
