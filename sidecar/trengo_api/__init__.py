"""The HTTP client for Trengo's REST API: client, answers, transport, retry, rate limit. May import config,
plan, state and the kernel.
"""
