from cli.agentctl import main

main()
