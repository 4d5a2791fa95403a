"""The HTTP ingest (RudderStack/Segment-compatible /v1 routes) end to end, real SDKs included."""
