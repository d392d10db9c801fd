//! Named model weights from a Piper voice (owned by the weights helper).
