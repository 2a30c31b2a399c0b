"""The tests, by kind: unit/, integration/, faults/, deploy/; support/ holds what they share."""
