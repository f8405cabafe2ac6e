from agentd.policy.spec import Mapping, Scalar

SPEC = Mapping({"level": Scalar("int", minimum=0, maximum=10)}, description="probe kind (tests only)")
