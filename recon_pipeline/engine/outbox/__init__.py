"""The outbox (SPEC 6): plan a message's write, claim and deliver due batches, back off,
dead-letter."""
