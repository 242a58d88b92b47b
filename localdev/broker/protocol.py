"""Names the broker's data plane shares with subscribers (importable from any environment)."""

TRIGGER_HEADER = "Faaspipe-Trigger"  # on every delivery: the trigger that made it
REPLAY_TARGET = "faaspipetarget"  # extension set by `faaspipe dlq replay`: deliver to this trigger only
