"""Sockets: the listening sockets and their descriptor budget, connection capacity and its
watchdogs, and the HTTP server (uvicorn on sockets ratewire owns)."""
