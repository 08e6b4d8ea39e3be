"""``training.datasets`` keeps exporting what its users import from it."""

import training.datasets as datasets
from training.datasets import BatchStream, open_dataset
from training.datasets.spec import open_dataset as spec_open_dataset
from training.datasets.stream import BatchStream as StreamBatchStream


def test_package_reexports_the_public_names() -> None:
    assert open_dataset is spec_open_dataset and BatchStream is StreamBatchStream
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None, name
