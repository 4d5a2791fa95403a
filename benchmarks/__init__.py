"""`python -m benchmarks` (or `make bench`): the sidecar against a raw httpx client, on the simulator.

Starts the Trengo simulator and the sidecar as separate processes, then measures:
Trengo calls per event next to RudderStack's Trengo destination, Track throughput and
latency through the sidecar as ratios to a raw httpx client posting the same tickets to the
same simulator, and the memory of the contact cache. Writes docs/benchmarks.md and
docs/benchmarks.png. Not a timed test: only tests/project/test_bench_smoke.py runs in CI, and it
asserts call counts, never wall-clock numbers.
"""

TOKEN = "bench-token"
CHANNEL_ID = 405980  # the simulator's seeded EMAIL channel
SMS_CHANNEL_ID = 405981  # its seeded SMS channel: the phone scenario names it per event
EVENT = "Product Purchased"
FOLLOWUP_EVENT = "Order Placed"  # a ticket with an internal note and two labels (issue 15)
LABELS = ("VIP", "Orders")
ASSIGNED_EVENT = "Refund Requested"  # a ticket routed to a team with POST /tickets/{id}/assign (issue 20)
TEAM = "Support"
PHONE_REGION = "NL"  # defaultPhoneRegion: the phone scenarios spell numbers as a Dutch app would
TEMPLATES = [
    {"from": EVENT, "to": "{{ event }}: order {{ order_id }}"},
    {"from": "Signed Up", "to": ""},
    {
        "from": FOLLOWUP_EVENT,
        "to": "Order {{ order_id }}",
        "note": "Order {{ order_id }}: {{ revenue }} {{ currency }}, {{ items }} items",
        "labels": list(LABELS),
    },
    {"from": ASSIGNED_EVENT, "to": "", "assignTo": {"team": TEAM}},
]
# Traits the plain identify scenarios do not carry, so only the custom field scenarios write fields.
CUSTOM_FIELD_TITLES = ("Tier", "City")
CUSTOM_FIELDS = [{"from": "tier", "to": "Tier"}, {"from": "address.city", "to": "City"}]
