// A transfer may last as long as the image is large; what must not last is silence. The watchdog
// aborts its signal when nothing moved for `ms` (undici's own timeouts would count the whole body).

export class StallWatchdog {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;

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
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(this.stalled()), this.ms);
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}
