"""FedVTC statistics: per-class moments and their pooling by the law of total variance."""

from __future__ import annotations

import torch

from fedapp.task.stats import FeatureStats, StatsAccumulator, class_stats, pool_stats


def one_class_stats(values: list[float]) -> FeatureStats:
    z = torch.tensor(values).unsqueeze(1)  # (N, 1)
    return class_stats(z, torch.zeros(len(values), dtype=torch.long), num_classes=1)


def test_pool_stats_equals_stats_of_concatenated_features() -> None:
    # node A holds {0, 2}, node B holds {4, 4, 7}: over {0, 2, 4, 4, 7} mean 3.4, variance 5.44
    pooled = pool_stats([one_class_stats([0.0, 2.0]), one_class_stats([4.0, 4.0, 7.0])])
    torch.testing.assert_close(pooled.mean, torch.tensor([[3.4]]))
    torch.testing.assert_close(pooled.var, torch.tensor([[5.44]]))
    assert pooled.count.tolist() == [5]


def test_pooling_matches_direct_statistics_with_missing_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    num_classes, dim = 4, 3
    chunks = []
    for k in range(3):  # node k lacks class k entirely
        y = torch.randint(0, num_classes, (50,), generator=gen)
        y = y[y != k]
        z = torch.randn(len(y), dim, generator=gen) * (k + 1) + y.unsqueeze(1).float()
        chunks.append((z, y))
    pooled = pool_stats([class_stats(z, y, num_classes) for z, y in chunks])
    z_all = torch.cat([z for z, _ in chunks])
    y_all = torch.cat([y for _, y in chunks])
    for c in range(num_classes):
        zc = z_all[y_all == c]
        torch.testing.assert_close(pooled.mean[c], zc.mean(0))
        torch.testing.assert_close(pooled.var[c], zc.var(0, unbiased=False))
        assert int(pooled.count[c]) == len(zc)


def test_streamed_statistics_equal_one_shot_and_absent_classes_are_zero() -> None:
    z = torch.arange(12.0).reshape(6, 2)
    y = torch.tensor([0, 0, 2, 2, 2, 0])
    acc = StatsAccumulator(num_classes=3, dim=2)
    acc.add(z[:4], y[:4])
    acc.add(z[4:], y[4:])
    streamed, direct = acc.result(), class_stats(z, y, 3)
    torch.testing.assert_close(streamed.mean, direct.mean)
    torch.testing.assert_close(streamed.var, direct.var)
    assert streamed.count.tolist() == [3, 0, 3]
    assert streamed.present.tolist() == [True, False, True]
    assert (streamed.mean[1] == 0).all() and (streamed.var[1] == 0).all()
