"""Score distillation guidances (SDS, SSD, IESD) and the oracle used by the tests."""
