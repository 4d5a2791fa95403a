"""Pure planning: events, filters, templates, transform and follow-up plans; no I/O. May import state's value
types and the kernel.
"""
