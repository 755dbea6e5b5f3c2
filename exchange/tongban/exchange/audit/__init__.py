"""The access log: every decision about someone's data, written before the answer leaves."""
