"""fedzg: federated learning without sharing data, weights or gradients, on Flower."""
