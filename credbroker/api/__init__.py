"""gRPC transport: servicers, the adapter registering them behind the admission path
(:mod:`.handlers`), and the gRPC form of the error table (:mod:`.errors`)."""
