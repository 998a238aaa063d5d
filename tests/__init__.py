"""mailgate's test suite: unit tests, and integration tests against real mail daemons."""
