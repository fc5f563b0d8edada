// Heartbeats carry progress to the Web UI and are how a cancellation reaches an activity, so a
// long step heartbeats on a timer too, even while its progress does not move.
import { Context } from '@temporalio/activity';

export function keepHeartbeating(details: () => unknown, intervalMs = 2000): () => void {
  const ctx = Context.current();
  ctx.heartbeat(details());
  const timer = setInterval(() => ctx.heartbeat(details()), intervalMs);
  return () => clearInterval(timer);
}
