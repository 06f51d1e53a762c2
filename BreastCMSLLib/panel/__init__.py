"""The panel layer, Qt-free: the session both faces bind to, its warm worker process and background jobs."""
