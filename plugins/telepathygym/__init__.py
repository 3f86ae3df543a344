"""TelepathyGym: guess the entity the simulated user is thinking of (UserRL semantics)."""
