"""One package's behaviour at a time: tests/unit/<package>/ holds the tests of sidecar/<package>/."""
