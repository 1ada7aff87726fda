"""Game clients over websockets: consumers, the v1 protocol, auth, rate limits, resume.

Built by the bridge issue; today it holds the websocket URL table that asgi.py mounts.
"""
