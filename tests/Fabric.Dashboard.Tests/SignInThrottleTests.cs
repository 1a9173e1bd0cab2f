using Microsoft.Extensions.Time.Testing;

namespace Fabric.Dashboard.Tests;

/// <summary>Password guessing at the sign-in, attacked with a fake clock.</summary>
public class SignInThrottleTests
{
    [Fact]
    public void FiveWrongPasswordsForAName_LockItForFiveMinutes_WhateverTheAddress_ThenItMayTryAgain()
    {
        var time = new FakeTimeProvider(DateTimeOffset.Parse("2026-12-01T12:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        using var throttle = new SignInThrottle(time);
        for (var i = 0; i < SignInThrottle.UserLimit - 1; i++)
        {
            Assert.Null(throttle.Locked("admin", $"192.0.2.{i}"));
            throttle.Failed("admin", $"192.0.2.{i}");
        }
        Assert.Null(throttle.Locked("admin", "192.0.2.9"));
        throttle.Failed("admin", "192.0.2.9");
        // Locked from every address (a distributed guess), and not another name.
        Assert.Equal<TimeSpan?>(SignInThrottle.UserLockout, throttle.Locked("admin", "198.51.100.1"));
        Assert.Null(throttle.Locked("viewer", "198.51.100.1"));
        time.Advance(SignInThrottle.UserLockout - TimeSpan.FromSeconds(1));
        Assert.NotNull(throttle.Locked("admin", "198.51.100.1"));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Null(throttle.Locked("admin", "198.51.100.1"));
    }

    [Fact]
    public void FailuresOlderThanTheWindow_AreForgotten_AndARightPasswordClearsTheName()
    {
        var time = new FakeTimeProvider();
        using var throttle = new SignInThrottle(time);
        for (var i = 0; i < 20; i++)
        {
            throttle.Failed("admin", "192.0.2.1");
            time.Advance(SignInThrottle.Window / (SignInThrottle.UserLimit - 1) + TimeSpan.FromSeconds(1));
        }
        Assert.Null(throttle.Locked("admin", "192.0.2.2"));
        for (var i = 0; i < SignInThrottle.UserLimit - 1; i++)
        {
            throttle.Failed("viewer", "192.0.2.1");
        }
        throttle.Succeeded("viewer");
        throttle.Failed("viewer", "192.0.2.1");
        Assert.Null(throttle.Locked("viewer", "192.0.2.3"));
    }

    [Fact]
    public void ASprayOverManyNamesFromOneAddress_LocksTheAddress()
    {
        var time = new FakeTimeProvider();
        using var throttle = new SignInThrottle(time);
        for (var i = 0; i < SignInThrottle.AddressLimit; i++)
        {
            Assert.Null(throttle.Locked($"user{i}", "203.0.113.7"));
            throttle.Failed($"user{i}", "203.0.113.7");
        }
        Assert.Equal<TimeSpan?>(SignInThrottle.AddressLockout, throttle.Locked("admin", "203.0.113.7"));
        Assert.Null(throttle.Locked("admin", "203.0.113.8"));
    }

    [Fact]
    public void AFloodOfNewNames_CannotGrowWhatItRemembers_ButLocksStay()
    {
        var time = new FakeTimeProvider();
        using var throttle = new SignInThrottle(time);
        for (var i = 0; i < SignInThrottle.UserLimit; i++)
        {
            throttle.Failed("admin", "192.0.2.1");
        }
        for (var i = 0; i < SignInThrottle.Capacity * 3; i++)
        {
            throttle.Failed($"spray{i}", $"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}");
            time.Advance(TimeSpan.FromMilliseconds(1));
        }
        Assert.True(throttle.Remembered <= SignInThrottle.Capacity + 2, $"{throttle.Remembered} entries");
        Assert.NotNull(throttle.Locked("admin", "192.0.2.99"));
    }
}
