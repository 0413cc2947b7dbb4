"""The pure core: folding chunks into sessions, scheduling re-scores, the policy, the guard's input, the
scoring pipeline, and the ports it calls. No I/O library and nothing from edges, client, evaluation or
training (tests/unit/test_layout.py checks it)."""
