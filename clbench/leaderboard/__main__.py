"""Owns ``python -m clbench.leaderboard``: prints the entry's JSON Schema, derived from the typed
entry (:func:`clbench.leaderboard.record.json_schema`), for ``docs/leaderboard-entry.schema.json``."""

import json

from clbench.leaderboard.record import json_schema

if __name__ == "__main__":  # python -m clbench.leaderboard > docs/leaderboard-entry.schema.json
    print(json.dumps(json_schema(), indent=2))
