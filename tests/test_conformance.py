"""mfdcomp's own codecs through the public conformance suite (the same tests a plugin author runs)."""

from mfdcomp.testing.pytest_plugin import conformance_tests

test_conformance = conformance_tests()
