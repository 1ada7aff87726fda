"""Settings split by concern: `base` (shared), `dev` (make run), `test` (pytest), `production`."""
