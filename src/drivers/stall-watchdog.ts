// A transfer may last as long as the image is large; what must not last is silence. The watchdog
// aborts its signal when nothing moved for `ms` (undici's own timeouts would count the whole body).

export class StallWatchdog {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  /** `stalled` builds the abort reason when it fires, so it can say how far the transfer got. */
  constructor(
    private readonly ms: number,
    private readonly stalled: () => Error,
  ) {}

  /** The caller's signal and the watchdog's, whichever aborts first. */
  signal(caller?: AbortSignal): AbortSignal {
    return caller ? AbortSignal.any([caller, this.controller.signal]) : this.controller.signal;
  }

  /** Something moved: the silence counts from now. */
  arm(): void {
    // undici may still pull a chunk from an aborted body after the transfer ended: that must not
    // start the clock again.
    if (this.stopped) return;
    clearTimeout(this.timer);
    // It watches a transfer, it does not keep a process alive: a worker told to stop exits at once.
    this.timer = setTimeout(() => this.controller.abort(this.stalled()), this.ms).unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
