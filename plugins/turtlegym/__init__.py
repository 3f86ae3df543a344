"""TurtleGym: uncover the hidden story behind a lateral-thinking puzzle (UserRL semantics)."""
