"""BreastCMSL test suites (a package, so tests can import shared helpers from conftest)."""
