"""Message states and the transitions between them.

```
client mail:  queued ──► delivered            held ──► approved ──► queued ──► …
                 │  └──► bounced (5xx, age)      ├──► rejected
                 └─ (4xx: stays queued, retried) └──► expired
refused:      refused  (the client got 5xx; kept as metadata for replay and reports)
```
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    HELD = "held"
    APPROVED = "approved"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REFUSED = "refused"


# Mail in these states still has work to do; retention never purges it.
OPEN_STATES = frozenset({State.QUEUED, State.HELD, State.APPROVED})
