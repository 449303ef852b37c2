"""Helpers the tests share: real servers and clients, messages, outages, the gateway as a process."""
