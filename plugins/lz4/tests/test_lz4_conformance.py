"""mfdcomp's whole public conformance suite, run against this plugin's codec."""

from mfdcomp.testing.pytest_plugin import conformance_tests

test_conformance = conformance_tests("lz4")
