"""``mfdcomp bench``: codec × channels × data kind throughput, beside baselines measured in the same run.

* :mod:`~mfdcomp.bench.matrix`: the matrix, over `mfdcomp send`/`recv` processes;
* :mod:`~mfdcomp.bench.library`: each codec's raw library, one thread, on the same pages;
* :mod:`~mfdcomp.bench.qemu`: QEMU's own migration of the same image (through mfdcomp.qemu.harness);
* :mod:`~mfdcomp.bench.targets`: the issue's targets judged on the results;
* :mod:`~mfdcomp.bench.scaling` and :mod:`~mfdcomp.bench.fit`: time over image size, least squares;
* :mod:`~mfdcomp.bench.netns`: the link-speed sweep between two network namespaces;
* :mod:`~mfdcomp.bench.plot` (matplotlib, the ``bench`` extra) and :mod:`~mfdcomp.bench.report`.
"""
