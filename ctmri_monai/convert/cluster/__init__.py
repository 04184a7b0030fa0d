"""Batch conversion on a Dask cluster: one task per input file, the model loaded once per worker.

`args` holds the command-line flags and imports no Dask, so ``ctmri convert`` without them never imports it;
`connect` starts or reaches the cluster, `worker` is what runs on a worker (the model cache and the task),
`run` is the client's side (submit, progress, summary). Install with ``pip install "ctmri-monai[dask]"``.
"""

from ctmri_monai.convert.cluster.args import ClusterSpec, add_cluster_arguments, cluster_spec

__all__ = ["ClusterSpec", "add_cluster_arguments", "cluster_spec"]
