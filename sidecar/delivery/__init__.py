"""Delivering one event to Trengo: caches, contacts, follow-ups, idempotency and the outcome. May import
trengo_api, config, plan, state and the kernel.
"""
