"""ovnet manager: the gRPC server and its control loops over etcd."""
