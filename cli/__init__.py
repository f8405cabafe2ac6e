"""agentctl: the command line of agentd. It talks to the daemon only through the API client."""
