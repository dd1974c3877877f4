"""Stage orchestrators (train, infer, ...): each composes the lower layers for one command."""
