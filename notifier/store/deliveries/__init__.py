"""The delivery log: ``lifecycle`` (plan, claim, finish, release) and ``log`` (queries)."""
