// SPDX-License-Identifier: MIT
// Test-only stand-in for USDC on Base: a plain ERC-20 with 6 decimals and an open mint.
// It has no constructor and no initialised storage, so its runtime code alone can be
// written to the real USDC address on a local anvil with `anvil_setCode` and it behaves
// as a fresh token there (all balances, allowances and the supply start at zero).
pragma solidity ^0.8.20;

contract TestUSDC {
    // Only mappings and a counter: zero-valued storage needs no initialisation.
    mapping(address => uint256) private _balances;
    mapping(address => mapping(address => uint256)) private _allowances;
    uint256 private _totalSupply;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    // Metadata as pure functions rather than storage, so setCode needs no storage writes.
    function name() external pure returns (string memory) {
        return "USD Coin";
    }

    function symbol() external pure returns (string memory) {
        return "USDC";
    }

    function decimals() external pure returns (uint8) {
        return 6;
    }

    function totalSupply() external view returns (uint256) {
        return _totalSupply;
    }

    function balanceOf(address account) external view returns (uint256) {
        return _balances[account];
    }

    function allowance(address owner, address spender) external view returns (uint256) {
        return _allowances[owner][spender];
    }

    function approve(address spender, uint256 value) external returns (bool) {
        _allowances[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = _allowances[from][msg.sender];
        require(allowed >= value, "TestUSDC: insufficient allowance");
        // An unlimited approval stays unlimited, as in common ERC-20 implementations.
        if (allowed != type(uint256).max) {
            _allowances[from][msg.sender] = allowed - value;
        }
        _move(from, to, value);
        return true;
    }

    // Open to anyone: this contract exists only for local tests.
    function mint(address to, uint256 amount) external {
        require(to != address(0), "TestUSDC: mint to the zero address");
        _totalSupply += amount;
        _balances[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function _move(address from, address to, uint256 value) private {
        require(to != address(0), "TestUSDC: transfer to the zero address");
        uint256 balance = _balances[from];
        require(balance >= value, "TestUSDC: insufficient balance");
        unchecked {
            // Cannot underflow: checked just above; the sum cannot exceed the total supply.
            _balances[from] = balance - value;
            _balances[to] += value;
        }
        emit Transfer(from, to, value);
    }
}
