"""Shared test configuration. Server fixtures live beside the tests that use them."""

pytest_plugins = ["pytester"]
