"""How long things live: the disconnect sweeper, connection scopes and tasks, the app's lifespan."""
