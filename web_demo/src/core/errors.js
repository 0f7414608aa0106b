// The one error type for mistakes a user can cause (no bundle, tampered file, unknown mode, bad prompt): its
// message is one sentence naming the thing and the fix, and the page shows it as is (ralu_edge/errors.py
// UserError). Anything else is a bug and keeps its stack.

export class UserError extends Error {
  constructor(message) {
    super(message);
    this.name = 'UserError';
  }
}
