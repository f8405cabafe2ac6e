from cli.agentctl import main

main(prog_name="agentctl")
