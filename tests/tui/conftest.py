"""The chat's tests by layer: unit/ (pure functions), widgets/ (a widget alone in a small
test app), app/ (the whole app through Pilot, as a process, and its snapshots).

Their shared helpers are in tui_helpers.py (this folder is on sys.path for them); the
fixtures (the test model, the engine) are the suite's, in tests/conftest.py.
"""
