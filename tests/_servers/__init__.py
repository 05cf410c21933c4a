"""Throwaway servers (Postgres, Redis) for tests and benchmarks."""
