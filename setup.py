from setuptools import find_packages, setup

setup(
    name="sdn-egress",
    version="0.1.0",
    description="Fixed egress IPs for Kubernetes pods through OVS Geneve tunnels and conntrack SNAT",
    python_requires=">=3.11",
    packages=find_packages(include=["sdn_egress", "sdn_egress.*", "flows", "flows.*",
                                    "ovs_setup", "ovs_setup.*"]),
    package_data={"sdn_egress": ["lab/topologies/*.yaml", "examples/*.yaml"]},
    install_requires=[
        "os-ken>=4.0",
        "ovsdbapp>=2.0",
        "kubernetes>=29",
        "pyroute2>=0.7",
        "netaddr>=0.10",
        "PyYAML>=6",
        "prometheus-client>=0.17",
    ],
    extras_require={"test": ["pytest>=7", "cel-python>=0.5", "wheel>=0.40",
                             "hypothesis>=6.100",
                             "ruff>=0.8", "import-linter>=2.0"]},
    entry_points={"console_scripts": ["sdn-egress = sdn_egress.cli:main"]},
)
